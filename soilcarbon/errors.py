"""The one exception family for errors a user can cause (bad files, columns, samples, configs).

The CLI turns a :class:`SoilCarbonError` into one ``error: ...`` line on stderr and exit
code 2; the HTTP service turns it into a 4xx JSON answer. Messages name the file, column or
sample and say what to do.
"""


class SoilCarbonError(Exception):
    """A problem with the user's input, stated in one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
