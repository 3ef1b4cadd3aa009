"""Who may do what: per-call admission, operators and their roles, the signed device policy
and app tokens, and the RPC authorization table.
"""
