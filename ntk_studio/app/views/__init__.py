"""The plots of the main window (pyqtgraph), each fed plain NumPy arrays from worker payloads."""
