"""The access log (uvicorn's, one line per request) without query strings.

No route of this server reads a query string, so a query string only ever carries what a client put
there by mistake or on purpose: `?api_key=...` from a misconfigured client, or megabytes of junk
meant to fill the disk. The path is kept; everything from the first "?" is dropped.
"""

import logging

ACCESS_LOGGER = "uvicorn.access"


class DropQueryString(logging.Filter):
    """Rewrites uvicorn's access record (client, method, path with query, http version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], args[2].split("?", 1)[0], args[3], args[4])
        return True


def install_access_log_filter() -> None:
    """Adds the filter to uvicorn's access logger (once). uvicorn's logging setup replaces the
    logger's handlers but keeps its filters, so this may run before the server is configured."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, DropQueryString) for f in logger.filters):
        logger.addFilter(DropQueryString())
