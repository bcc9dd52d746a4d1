"""Custom Lightning strategies (imported as ``lit_psion.strategies``)."""

from lit_psion.strategies.transactional import (
    TransactionalDDPStrategy,
    TransactionalStrategy,
    TransactionPolicy,
)

__all__ = ["TransactionPolicy", "TransactionalDDPStrategy", "TransactionalStrategy"]
