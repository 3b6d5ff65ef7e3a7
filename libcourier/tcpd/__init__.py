"""The listener (Courier's couriertcpd): bind, fork per connection, limits, access rules, TLS."""
