"""The recipe stage: TOML in, one typed, validated ``Recipe`` out."""
