"""Checks shared by the file sources (TIFF, PNG, JPEG) before any pixel is decoded.

* The pixel limit: :data:`DEFAULT_MAX_PIXELS`, :func:`resolve_max_pixels`, :func:`check_pixel_limit`
  (also importable from :mod:`tilegraph.source.tiff_source`, where they used to live).
* :func:`check_input_file`: the path exists, is not a directory and is not empty.
"""

from __future__ import annotations

import os

from tilegraph.errors import (
    CorruptSourceError,
    ImageTooLargeError,
    InputError,
    SourceNotFoundError,
    UnsupportedSourceError,
)

__all__ = ["DEFAULT_MAX_PIXELS", "resolve_max_pixels", "check_pixel_limit", "check_input_file"]

#: Default limit on the pixels (rows x cols) a header may claim: 4 gigapixels. Legitimate originals of
#: hundreds of megapixels pass; a 100,000 x 100,000 claim is refused. Override per call with
#: ``max_pixels=`` or for the process with the environment variable ``TILEGRAPH_MAX_PIXELS``.
DEFAULT_MAX_PIXELS = 4_000_000_000

_ENV_MAX_PIXELS = "TILEGRAPH_MAX_PIXELS"


def resolve_max_pixels(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels`` if given, else ``$TILEGRAPH_MAX_PIXELS``, else the default.

    Raises
    ------
    InputError
        The value is not a positive integer.
    """
    if max_pixels is None:
        env = os.environ.get(_ENV_MAX_PIXELS)
        if env is None or not env.strip():
            return DEFAULT_MAX_PIXELS
        try:
            max_pixels = int(float(env))
        except ValueError:
            raise InputError(
                f"{_ENV_MAX_PIXELS}={env!r} is not a number", hint="set it to a pixel count such as 4e9"
            ) from None
    if int(max_pixels) <= 0:
        raise InputError(
            f"max_pixels must be positive, got {max_pixels}", hint="pass a pixel count such as 4e9"
        )
    return int(max_pixels)


def check_pixel_limit(rows: int, cols: int, *, path: str | None, max_pixels: int | None = None) -> None:
    """Refuse a header claiming more than the pixel limit, before any pixel memory is allocated.

    Raises
    ------
    ImageTooLargeError
        ``rows * cols`` exceeds the limit (see :func:`resolve_max_pixels`).
    """
    limit = resolve_max_pixels(max_pixels)
    pixels = int(rows) * int(cols)
    if pixels > limit:
        raise ImageTooLargeError(
            f"the header claims {int(cols)} x {int(rows)} = {pixels / 1e9:.2f} gigapixels, more than the limit "
            f"of {limit / 1e9:.2f} gigapixels",
            path=path,
            hint=f"if the image is genuine, raise the limit with max_pixels= or ${_ENV_MAX_PIXELS}",
        )


def check_input_file(path: str, format_name: str) -> tuple[int, int]:
    """Check that ``path`` is an existing, non-empty file; return its ``(st_mtime_ns, st_size)``.

    ``format_name`` (``"TIFF"``, ``"PNG"``, ...) only goes into the message for a directory.

    Raises
    ------
    SourceNotFoundError
        No such file.
    UnsupportedSourceError
        The path is a directory.
    CorruptSourceError
        The file is empty.
    """
    if not os.path.exists(path):
        raise SourceNotFoundError("no such file", path=path, hint="check the path")
    if os.path.isdir(path):
        raise UnsupportedSourceError(
            f"is a directory, not a {format_name} file",
            path=path,
            hint="point at an image file",
        )
    st = os.stat(path)
    if st.st_size == 0:
        raise CorruptSourceError("file is empty (0 bytes)", path=path, hint="re-export the image")
    return (st.st_mtime_ns, st.st_size)
