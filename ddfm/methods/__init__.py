"""The fusion methods, one folder (or module) each."""
