"""The command line: a thin layer over ``fleet_reimage.api`` (entry point in ``main``)."""
