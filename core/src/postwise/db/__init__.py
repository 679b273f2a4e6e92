"""Storage: the SQLModel data model, engines and migrations."""
