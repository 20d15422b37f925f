"""Client errors with a JSON body: every bad request is a 4xx that says what was wrong."""

from __future__ import annotations


class ApiError(Exception):
    """``raise ApiError(422, "pair names an item not in the project", item="x")`` -> that status
    and ``{"error": message, **details}``."""

    def __init__(self, status: int, message: str, **details):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details

    def body(self) -> dict:
        return {"error": self.message, **self.details}
