"""Free text a caller writes (a finding's title and description, a close or reopen reason).

Control characters other than tab, line feed and carriage return (the rest of C0, DEL,
C1) are refused, not stripped: a record is stored as it was sent or not at all. A NUL
in a title was accepted and forwarded (PostgreSQL's ``text`` cannot hold one, C
consumers of a report cut the string at it); an escape sequence in a reason reached
every terminal and report that prints it. Tab and line breaks stay allowed everywhere:
a multi-line reason typed in a text box was accepted before and must stay so (and the
logs escape them: JSON always, the console format since ``app.core.logging``'s
``escape_controls``). Weighed against stripping them silently (the record read back
would differ from the one sent, and a signed body's meaning would change after the
decision) and against accepting them (every consumer would have to escape them itself).

The pattern is for pydantic (Rust regex, where ``$`` is the end of the text).
"""

from __future__ import annotations

# C0 controls but tab, line feed and carriage return; DEL; C1 controls.
TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
