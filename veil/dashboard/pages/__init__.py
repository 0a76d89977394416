"""The dashboard's pages: server-rendered, each usable without JavaScript."""
