"""
The reverse proxy engine: HTTP/1.1 from clients (L{server}), pooled
keep-alive connections to origins (L{upstream}), header rewriting
(L{headers}) and the pages Veil answers itself (L{pages}).
"""
