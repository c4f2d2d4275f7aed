"""Benchmarks, load simulator and capacity model of the nearby mesh.

Every scenario measures the real path and, in the same run on the same
machine, a ceiling (a bare grpc.aio server, raw Redis, bare COPY), so that
figures from a shared, noisy machine are read as ratios.
"""
