"""One exception type for every user-facing failure: what went wrong, and the fix."""


class AutointerpError(Exception):
    """A bad input or environment problem. The message always names the fix."""

    def __init__(self, problem: str, fix: str):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}")
