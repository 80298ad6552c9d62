"""The real-data demo: its built-in corpus (gettext catalogs) and, later, its pipeline."""
