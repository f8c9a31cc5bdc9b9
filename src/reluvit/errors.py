"""The error a constructor raises for an argument it refuses: it names the argument, so that a config key that is
that argument can be named in the one-line config error (``reluvit.run.validate``)."""


class ArgumentError(ValueError):
    """``name``: the refused argument, dotted through the constructors that passed it on (``attention.alpha``)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name, self.message = name, message

    def __reduce__(self):  # the error crosses processes (DDP, submitit) with both fields
        return ArgumentError, (self.name, self.message)

    def within(self, argument: str) -> "ArgumentError":
        """The same error, seen from the constructor whose ``argument`` held the refused value."""
        return ArgumentError(f"{argument}.{self.name}", self.message)


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ArgumentError(name, f"{value!r} is not one of: {', '.join(map(str, allowed))}")
