"""cmdeploy: the operator's CLI that sets up and checks a chatmail relay."""
