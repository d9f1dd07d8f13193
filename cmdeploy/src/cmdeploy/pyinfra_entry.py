"""The file pyinfra executes (`cmdeploy run`, cmdeploy.run): the deploy's inputs, read from
the environment here and nowhere else, handed to `cmdeploy.deploy.deploy`.

`CHATMAIL_INI` (the local ini), `CHATMAILD_WHEELS` (chatmaild and its dependencies as wheels,
built on the operator's machine), `CHATMAIL_WEBSITE` (a built web site directory, optional),
`CHATMAIL_WEBSITE_ONLY`, `CHATMAIL_VERSION` (the checkout's commit), `CHATMAIL_DISABLE_MAIL`,
`CMDEPLOY_STAGES` (comma-separated, default all).
"""

# absolute imports: pyinfra executes this file as a script, not as part of the package
import os
from pathlib import Path

from cmdeploy.deploy import deploy
from cmdeploy.steps import STAGES, DeployInputs


def inputs_from_environment(env: dict[str, str]) -> DeployInputs:
    website = env.get("CHATMAIL_WEBSITE")
    return DeployInputs(
        ini=Path(env["CHATMAIL_INI"]),
        wheels=Path(env["CHATMAILD_WHEELS"]),
        website=Path(website) if website else None,
        website_only=bool(env.get("CHATMAIL_WEBSITE_ONLY")),
        version=env.get("CHATMAIL_VERSION", ""),
        disable_mail=bool(env.get("CHATMAIL_DISABLE_MAIL")),
        stages=tuple(env.get("CMDEPLOY_STAGES", ",".join(STAGES)).split(",")),
    )


deploy(inputs_from_environment(dict(os.environ)))
