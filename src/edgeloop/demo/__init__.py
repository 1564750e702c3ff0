"""``edgeloop demo``: a coordinator and three edges as processes, a drifting stream replayed through them.

May import ``client``, ``config`` and ``protocol`` only; it starts ``edgeloop cloud``/``edgeloop edge``
as processes (``python -m edgeloop ...``) and never imports them.
"""
