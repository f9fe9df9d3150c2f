"""The dev kit: real throwaway servers on 127.0.0.1 and a whole local office, for the tests, the benches and
`make demo`. Not part of the installed product; importable from a checkout (docs/DEVKIT.md).
"""
