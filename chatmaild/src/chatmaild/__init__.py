"""chatmaild: the small services a chatmail relay runs beside Postfix and Dovecot."""
