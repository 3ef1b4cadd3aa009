"""What sync passes leave in the agent's state table for `edgefleet-agent status`: when
the device last synced, the last error, and the fleet's signed receipt of its audit log
(read without loading the sync machinery and its gRPC client)."""

LAST_SYNC_KEY = "last_sync"
LAST_ERROR_KEY = "last_error"
RECEIPT_KEY = "audit_receipt"
