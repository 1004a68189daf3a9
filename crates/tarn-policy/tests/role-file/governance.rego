# The hand-written policy of tarn-server's governance tests (tests/it/governance.rs), which
# governance.toml must decide the same as.
package trino

import rego.v1

default allow := false

admin if "admin" in input.context.identity.groups

analyst if "analyst" in input.context.identity.groups

analyst if input.context.identity.user == "svc"

allow if admin

allow if input.action.operation in {"ExecuteQuery", "AccessCatalog", "FilterCatalogs", "FilterSchemas"}

allow if {
	analyst
	input.action.operation in {"SelectFromColumns", "FilterTables", "FilterColumns"}
	input.action.resource.table.schemaName == "sales"
}

rowFilters contains {"expression": "region = 'eu'"} if {
	not admin
	input.action.resource.table.schemaName == "sales"
	input.action.resource.table.tableName == "orders"
}

columnMask := {"expression": "'****' || substr(email, strpos(email, '@') - 1, 1)"} if {
	not admin
	input.action.resource.column.schemaName == "sales"
	input.action.resource.column.tableName == "customers"
	input.action.resource.column.columnName == "email"
}
