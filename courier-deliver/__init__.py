"""courier-deliver: the queue manager (courierd) and local delivery (courierlocal)."""
