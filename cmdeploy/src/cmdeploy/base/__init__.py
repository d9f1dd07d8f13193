"""The system under every other component: Debian's base packages, the vmail user, the
mailboxes directory, the mail name, the kernel limits Dovecot needs, and the version file.

Dovecot watches the mailbox of every IDLE connection with inotify, all of them as the one
user vmail; past Debian's 128 instances per user it falls back to polling every 30 s, and
mail reaches phones that much later.
"""

from __future__ import annotations

SYSCTL_FILE = "/etc/sysctl.d/90-chatmail.conf"
SYSCTL = (
    "# managed by cmdeploy: Dovecot's IDLE connections all watch mailboxes as user vmail\n"
    "fs.inotify.max_user_instances = 65536\n"
    "fs.inotify.max_user_watches = 1048576\n"
)
