//! HTTPS gateway (Caddy driven through its admin API).
