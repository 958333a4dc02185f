"""``grid``: the command line over the library.

``main`` is the entry (the tree of groups, ``--version``, help); ``memory`` and ``cluster`` hold
the commands of ``grid memory ...`` and ``grid cluster ...``; ``grammar`` checks a command line
before anything runs; ``args`` turns what was typed into the library's types; ``output`` is the
one output (results as text or JSON, messages, the stdout guard); ``format`` draws tables,
previews and progress; ``errors`` maps what went wrong to the ``error:`` line and exit code.
"""
