"""The Sensaphone.net simulator: its store and its HTTP(S) server."""
