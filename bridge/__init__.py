"""Payment-provider webhooks to Sotion memberships."""
