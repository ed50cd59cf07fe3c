"""One adapter per peer library the benchmarks compare against (``archai``, ``litdata``, ``nanogpt``).

Each adapter imports its library lazily, inside the functions that need it, so the suites import
cleanly (and their zarrtok-only parts run) in the main virtualenv; the peers themselves live in
``.venv-peers`` (``bash benchmarks/peers_env.sh``, see ``benchmarks/PEERS.md``).
"""
