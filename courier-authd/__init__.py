"""courier-authd: the authentication daemon (Courier authdaemond protocol)."""
