"""One module per `ntk-studio-cli` subcommand, named after it: each has ``add_parser(sub)`` and ``run(args)``.

``adapt`` also holds the model, data and method options that ``compare``, ``export`` and ``inspect``
share. ``main`` registers them in :data:`COMMAND_MODULES` order.
"""
