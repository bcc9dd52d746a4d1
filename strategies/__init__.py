"""Custom Lightning strategies (imported as ``lit_psion.strategies``).

The transactional (rollback-on-regression) and elastic-membership strategies land here.
"""
