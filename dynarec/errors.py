"""User-facing errors: the CLI prints them as one line on stderr and exits non-zero."""


class DynarecError(Exception):
    """Base class for mistakes in user input (data, schema, config); never a bug in dynarec."""


class ConfigError(DynarecError):
    pass


class SchemaError(ConfigError):
    """A bad schema file or value (a ConfigError: the schema is configuration)."""


class DataError(DynarecError):
    pass


class DataWarning(UserWarning):
    """Data that is accepted but may not mean what the user thinks (e.g. rows without a domain); the CLI
    prints it as one ``dynarec: warning:`` line on stderr."""
