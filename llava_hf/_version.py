"""The installed version of llava_hf, for reports and cards; low modules import it from here, not from the
package face (which imports every module)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llava_hf")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
