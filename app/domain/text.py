"""Free text a caller writes (a finding's title and description, a close or reopen reason).

Control characters are refused, not stripped: a record is stored as it was sent or not
at all. A NUL in a title was accepted and forwarded (PostgreSQL's ``text`` cannot hold
one, C consumers of a report cut the string at it); a line break or an escape sequence
in a reason reached the console log raw (``app.core.logging`` now escapes them there
too) and any report that prints it. Single-line fields (titles, reasons) take no
control character at all; a description keeps tab, line feed and carriage return.
Weighed against stripping them silently (the record the caller reads back would differ
from the one sent, and a signed body's meaning would change after the decision) and
against accepting them (every consumer would have to escape them itself).

The patterns are for pydantic (Rust regex, where ``$`` is the end of the text).
"""

from __future__ import annotations

# C0 controls, DEL and C1 controls.
SINGLE_LINE_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
# The same, but tab, line feed and carriage return.
MULTI_LINE_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
