"""User-facing errors: the CLI prints them as one line on stderr and exits non-zero."""


class DynarecError(Exception):
    """Base class for mistakes in user input (data, schema, config); never a bug in dynarec."""


class SchemaError(DynarecError):
    pass


class DataError(DynarecError):
    pass


class ConfigError(DynarecError):
    pass
