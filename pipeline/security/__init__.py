"""Keys, identities and transport security: HKDF derivations, the key file, the development PKI, TLS."""
