"""autosim-nuclei: fluorescence-microscopy tiles of cell nuclei and their masks (entry point
``autosim.simulators: nuclei``). Importing the package imports no torch; ``autosim_nuclei.render``
does the drawing."""

__version__ = "0.1.0"
