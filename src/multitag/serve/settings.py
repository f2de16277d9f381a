"""The service's limits and access rules, validated once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

# Host names every server accepts besides its bind address (DNS-rebinding guard, see security).
LOCAL_HOSTS = ("localhost", "127.0.0.1")
MAX_PHOTOS = 10  # photos per /recommend request


@dataclass(frozen=True)
class ServeSettings:
    """Options of ``multitag serve``: each field is the command-line option of the same name
    (``_`` -> ``-``).

    ``max_upload_mb`` bounds every uploaded file (reading stops one byte past it),
    ``max_pixels`` every image's width x height read from its header before decoding,
    ``max_total_pixels`` the sum over one ``/recommend`` request. ``workers`` threads run the
    decoding and the model; ``queue`` more requests may wait for them, beyond that the answer
    is ``503`` with ``Retry-After``. ``map_points`` is the most points one ``/map`` answer
    holds (a larger catalogue is shown as a sample per view on a density layer).
    ``allowed_hosts`` are the Host header values accepted
    (``"*"``: any); ``api_key`` (``None``: open) is required in the ``X-API-Key`` header or the
    explorer's session cookie.
    """

    api_key: str | None = None
    max_upload_mb: float = 10
    max_pixels: int = 25_000_000
    max_total_pixels: int = 100_000_000
    workers: int = 2
    queue: int = 8
    map_points: int = 50_000
    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS

    def __post_init__(self) -> None:
        def bad(option: str, value, need: str) -> ValueError:
            return ValueError(f"--{option.replace('_', '-')} must be {need}, got {value!r}")

        if not self.max_upload_mb > 0:
            raise bad("max_upload_mb", self.max_upload_mb, "a positive number of megabytes")
        for name in ("max_pixels", "max_total_pixels", "workers", "map_points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, value, "an integer >= 1")
        if isinstance(self.queue, bool) or not isinstance(self.queue, int) or self.queue < 0:
            raise bad("queue", self.queue, "an integer >= 0")
        if self.max_total_pixels < self.max_pixels:
            need = f">= --max-pixels ({self.max_pixels})"
            raise bad("max_total_pixels", self.max_total_pixels, need)
        if self.api_key is not None and not self.api_key.strip():
            raise bad("api_key", "", "a non-empty string (or leave it out for an open server)")
        if not self.allowed_hosts or any(not h or "/" in h for h in self.allowed_hosts):
            raise bad("allowed_host", list(self.allowed_hosts), "host names such as localhost")

    @property
    def upload_bytes(self) -> int:
        """Largest accepted file, in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)


def default_hosts(bind: str, extra: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    """The Host allow-list for a server bound to ``bind``: it, ``localhost``, ``127.0.0.1``
    and ``extra`` (a wildcard bind address such as ``0.0.0.0`` is no host name, so left out)."""
    hosts = [*LOCAL_HOSTS, *extra]
    if bind not in ("0.0.0.0", "::", "") and bind not in hosts:
        hosts.insert(0, bind)
    return tuple(dict.fromkeys(hosts))
