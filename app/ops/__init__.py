"""Operations: metrics, rate limits, policy-reload notices and process settings."""
