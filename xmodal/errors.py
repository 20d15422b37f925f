"""Errors a user can act on. The CLI prints them without a traceback (unless --debug)."""


class XmodalError(Exception):
    """Base class: the message says what went wrong and what to do."""


class DataError(XmodalError):
    """Input data is missing, empty, corrupt or inconsistent."""


class ConfigError(XmodalError):
    """An unknown option value (encoder name, data set, metric...)."""


class ApiError(Exception):
    """Bad input from an API caller (a Label Studio payload, a search request): answered with
    ``status`` (a 4xx) and ``{"error": message, **details}``. Raised by the library's parsers as
    well as by the backend's routes, so that both say what was wrong the same way.

    ``raise ApiError(422, "pair names an item not in the project", item="x")``"""

    def __init__(self, status: int, message: str, **details):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details

    def body(self) -> dict:
        return {"error": self.message, **self.details}


def redact(text: str, *bases) -> str:
    """``text`` with every absolute path under one of ``bases`` (and the bases themselves) made
    relative, for a message that goes to an API caller: ``/srv/models/coco/items.json`` ->
    ``coco/items.json``. Callers name things by project-relative ids, never by server paths."""
    import os

    for base in bases:
        for form in {str(base), os.path.realpath(str(base))}:
            form = form.rstrip(os.sep)
            if form:
                text = text.replace(form + os.sep, "").replace(form, "$MODEL_DIR")
    return text
