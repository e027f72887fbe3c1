"""Value checks and message helpers the policy's validators share."""

NAME_MAX = 255


def show(v: str) -> str:
    """A value quoted for a one-line message: escapes newlines and other control characters, bounded."""
    return repr(v) if len(v) <= 100 else repr(v[:100]) + "..."


def toml_type(v) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
             dict: "a table"}
    return names.get(type(v), "a date/time")


def check_netns_name(v) -> str | None:
    if not isinstance(v, str):
        return f"must be strings, not {toml_type(v)}"
    if v in ("", ".", ".."):
        return f"{show(v)} is not a namespace name"
    if "/" in v:
        return f"{show(v)} contains '/': give the name of /run/netns/NAME, not a path"
    if not v.isprintable():  # NUL included
        return f"{show(v)} contains a control character"
    if len(v.encode()) > NAME_MAX:
        return f"longer than {NAME_MAX} bytes"
    return None
