"""The one error type configuration problems raise."""


class ConfigError(Exception):
    """A setting is wrong; the message names where it came from, the problem and the fix.

    The command line prints it as a single line and exits; it never becomes a traceback.
    """

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem
