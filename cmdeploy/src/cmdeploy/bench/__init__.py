"""`cmdeploy bench`: throughput, latency and capacity of a relay beside a bare baseline (issue 7).

Modules, from pure to I/O:

- `workload`: PGP/MIME messages of a chosen size, account names and passwords;
- `stats`: percentiles, rates, ratios, the client-side twin of the relay's rate limit;
- `profile`: CPU seconds per process class from two samples;
- `report`: the terminal table, the targets of issue 7 and the JSON document;
- `protocol`: a small asyncio SMTP and IMAP client;
- `drivers`: the loads (logins, throughput, latency, idle IMAP connections);
- `hosts` and `remote_helper`: what runs over SSH on the measured hosts;
- `bare`: the bare Postfix → Dovecot host of the same run;
- `plots`: PNG charts; `runner`: the phases in order, and the cleanup.
"""
