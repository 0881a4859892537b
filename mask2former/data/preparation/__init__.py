"""
Conversions of the public datasets' releases into the layouts the registrations read (``datasets/prepare_*.py``
are command lines over these functions). Not imported by ``mask2former``: only the scripts and tests use them.
"""
