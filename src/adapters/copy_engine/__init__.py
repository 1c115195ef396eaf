"""The transport of a real copy (SPEC 2.10): OpenSSH's `ssh` client for each
machine (`openssh`), and the stream moved from pipe to pipe in the kernel
under a shared bandwidth cap (`relay`). The copy's itinerary is `ssh_copy`."""
