"""``fleetctl``'s parts, one job each; the command line itself is ``ota/cli.py``.

http: the API client, its errors and settings; multipart: the streamed upload body;
targets: TUF targets metadata and its signature; publish: keygen, publish and resign;
rollout: the rollout commands and how rollouts are shown.
"""
