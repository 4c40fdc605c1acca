"""Test layout mirrors the package: inference/, methods/, events/, storage/, schemas/ hold unit tests
of the pure cores and methods; transforms/ the Beam stages; e2e/ whole builds and packaging.

pytest inserts this directory into sys.path (rootdir conftest), so every test imports the shared
builders as `from event_builders import ...`.
"""
