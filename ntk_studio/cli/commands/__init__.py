"""One module per `ntk-studio-cli` subcommand, named after it: each has ``add_parser(sub)`` and ``run(args)``.

The options and inputs several share are in ``cli/run_options.py``, the lines they print about a
run in ``cli/run_report.py``. ``cli.main`` registers them in its ``COMMAND_MODULES`` order.
"""
