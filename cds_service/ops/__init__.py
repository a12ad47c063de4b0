"""Operations: metrics, health, logs, audit, request context (see deployment/README.md)."""
