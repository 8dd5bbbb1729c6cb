"""OPC UA sources: config, node ids, the asyncua driver, address-space browsing."""
